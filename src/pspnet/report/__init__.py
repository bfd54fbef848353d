"""Pictures and run reports: charts, run logs, Markdown tables, the machine a number came from.

:mod:`pspnet.report.charts` draws every chart of the project (line plots, bar charts, the
confusion matrix) with Pillow only and imports nothing else from pspnet, so the engine can use
it; the other modules read training logs and write the Markdown pages of ``bench/*.py``.
Nothing here looks at the repository: paths come from the caller.
"""
