"""Everything raddiag shows to a person, and nothing else: :mod:`raddiag.views.console` renders
results on a terminal (rich tables, progress bars, one-line summaries), :mod:`raddiag.views.html`
renders the sweep report page and its figures.

Views take results the core computed (a :class:`~raddiag.metrics.MetricReport`, a
:class:`~raddiag.registry.Promotion`, rows of a listing ...) and a console or an output, and never
compute, read a store, or talk to MLflow or Ray. The CLI imports them inside its commands, so
``raddiag --help`` loads no rendering code.
"""
