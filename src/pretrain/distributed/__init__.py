"""Multi-process training: process groups (env), wrappers (parallelize) and collectives (comm).

Model code stays single-device; everything here wraps it from outside (DESIGN.md §2).
"""
