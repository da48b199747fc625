"""The one shared package: what every shop service needs, written once."""
