"""Small helpers shared by test modules."""
import csv


def write_list(path, rows):
    """Write a path,label,split CSV list (flowshard's list input) and return its path."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return path
