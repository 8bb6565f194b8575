"""Tiny test-data generators (written into tmp_path at test time; nothing here is committed data)."""
