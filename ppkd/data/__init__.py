"""Data: VOC lists and annotations, the split script's logic, the generated
demo data set, and reader guards."""
