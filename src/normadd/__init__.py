"""normadd: add a normality to a deployed visual anomaly detector by text (NAND)."""
