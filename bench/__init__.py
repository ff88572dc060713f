"""Benchmarks on the real embedded broker: ``python -m bench`` runs them all.

Each module with a ``collect(settings, args)`` function is one benchmark; it
returns a ``bench.common.Report`` (figures for the shared table, plus notes).
"""
