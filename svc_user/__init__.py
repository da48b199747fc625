"""The user service: accounts, passwords and the tokens that say who is calling."""
