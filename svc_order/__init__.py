"""The order service: arrives with its own issue; shopctl starts it once it has a __main__."""
