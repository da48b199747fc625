"""shopctl: run, check and operate the shop from the command line."""
