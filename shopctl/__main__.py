"""`python -m shopctl`: the same as the `shopctl` console script."""

from shopctl.main import app

app(prog_name="shopctl")
