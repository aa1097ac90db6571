"""supasync: dependable Supabase Realtime for Python backends (public API only)."""

from __future__ import annotations
