"""The order service: checkout, and each order's life from pending to delivered."""
