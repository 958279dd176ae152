"""Voila dashboards for stakeholders at ``/services/dashboards/``.

* :mod:`.service`: the hub-managed Voila process (its settings are ``c.Dashboards``);
* :mod:`.auth`: hub OAuth for Voila under a service prefix, and who is looking;
* :mod:`.sources`: what a dashboard kernel reads (the metrics, jobs and models services)
  with the dashboards' own token, narrowed to what the viewing user's role may see;
* :mod:`.live`, :mod:`.charts` and :mod:`.page`: live line charts (bqplot, updated in
  place), SVG bar charts and tables, and the page frame every dashboard notebook in
  ``notebooks/dashboards/`` shares (time range, live refresh, messages);
* :mod:`.panels`: the dashboards' sections.
"""
