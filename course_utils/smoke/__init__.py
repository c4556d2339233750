"""Smoke-mode stand-ins: tiny models of the real classes built from configs, and generated data. Offline, seeded."""
