"""Segmenters (SAM family), embedding cache, adapters, uncertainty."""
