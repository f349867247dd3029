"""Delivery: one worker per sink moves events from the outbox to its backend."""
