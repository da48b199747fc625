"""The cart service: each customer's cart in Redis, priced with the catalogue's current prices."""
