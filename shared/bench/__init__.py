"""Measurement and result tables (imports no other layer of shared).

measure: Timer, time_fn, PeakMemory, rss_follows_tensors, SavedTensorBytes, hardware_info
tables: ResultsConfig, results_dir, write_table, print_rows, copy_tables_to_readme
"""
from .measure import (PeakMemory, SavedTensorBytes, Timer, hardware_info, rss_follows_tensors,
                      time_fn)
from .tables import (ResultsConfig, begin, copy_tables_to_readme, print_rows, publish, results_dir,
                     write_table)

__all__ = ["begin", "publish", "PeakMemory", "SavedTensorBytes", "Timer", "hardware_info", "time_fn",
           "rss_follows_tensors",
           "ResultsConfig", "copy_tables_to_readme", "print_rows", "results_dir", "write_table"]
