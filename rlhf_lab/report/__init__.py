"""The report's rendering: figures (matplotlib/seaborn, one PNG per section) and the page (HTML tables
and text). The numbers come from :mod:`rlhf_lab.analysis`, :mod:`rlhf_lab.findings` and
:mod:`rlhf_lab.comparisons`; the stage that wires them is ``pipelines/report.py``."""
