"""Source: reading Duvo Jobs (the API client, extraction with its sweep, backfills)."""
