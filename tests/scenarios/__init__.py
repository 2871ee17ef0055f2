"""End-to-end stories across modules: faults, bad input, the first hour, soak, scale."""
