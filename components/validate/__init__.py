"""Validate: manifest of every file, quarantine of unreadable ones, a Great Expectations suite."""
