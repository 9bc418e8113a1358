"""Tests of arena-decontam."""
