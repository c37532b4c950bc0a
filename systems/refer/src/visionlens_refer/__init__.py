"""Referring segmentation (LGD) and referring human pose and mask (UniPHD)."""
