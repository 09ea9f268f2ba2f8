"""The evidence: audit records and their hash chains, the stores (file:// and s3://), flagged items and
decisions.
"""
