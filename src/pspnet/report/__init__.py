"""Pictures and run reports: charts, run logs, Markdown tables, the machine a number came from.

:mod:`pspnet.report.charts` draws every chart of the project (line plots, bar charts, the
confusion matrix) with matplotlib (the ``report`` extra, imported only when a chart is drawn)
and imports nothing else from pspnet, so the engine can use it; :mod:`pspnet.report.overlays`
composes pictures with Pillow; :mod:`pspnet.report.run_page` writes the page of a training run;
the other modules read training logs and write the Markdown pages of ``bench/*.py``.
Nothing here looks at the repository: paths come from the caller.
"""
