"""Semantic contracts: learned profiles and rules, vectorized enforcement, versioned registry."""
