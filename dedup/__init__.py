"""Find the duplicates in a collection, keep an index to query later, with thresholds calibrated on the user's own
images.

- :mod:`dedup.features`: one algorithm (a perceptual hash or a model of the zoo) applied to files and images;
- :mod:`dedup.calibrate`: the threshold reaching a target precision, measured on attacked copies of a sample of
  the collection against the collection's own non-copies, with the expected recall per edit family;
- :mod:`dedup.pairs`: every pair within a threshold (range search in batches), and groups;
- :mod:`dedup.actions`: the keep rule, the dry-run / move / symlink / list actions and their undo log;
- :mod:`dedup.report`: ``pairs.csv``, ``groups.json`` and the HTML review page;
- :mod:`dedup.find`: what ``find_duplicates.py`` runs.
"""
