"""The report's rendering: figures (matplotlib/seaborn, one PNG per section) and the page (HTML tables
and text). The numbers come from :mod:`rlhf_lab.analysis.fits`, :mod:`rlhf_lab.analysis.findings` and
:mod:`rlhf_lab.analysis.comparisons`; the stage that wires them is ``pipelines/report.py``."""
