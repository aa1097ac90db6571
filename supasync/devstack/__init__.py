"""supasync's local Supabase-compatible stack.

A real PostgreSQL with logical decoding, a Realtime server speaking the real wire protocol,
and the PostgREST and auth endpoints supasync uses, on one port. This package never imports
the client side of supasync, and the client side never imports it.
"""
