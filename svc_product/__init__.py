"""The product service: the catalogue and its stock, in MongoDB."""
