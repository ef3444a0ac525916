"""Test harness shared by unit and integration tests (real servers on loopback)."""
