"""State: the durable store (checkpoint, outbox, cursors), its lock and the pass record."""
