"""The local Realtime server: Phoenix wire protocol (v1 and v2), channels, postgres_changes,
broadcast and presence, token lifecycle and fault controls."""
