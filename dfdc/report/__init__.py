"""The exploratory report."""
