"""Run the user service: ``python -m svc_user``."""

from shopkit.app import run
from svc_user.app import UserSettings, create_app

run(create_app, UserSettings)
