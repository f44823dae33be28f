"""Can the map be trusted? Evaluation of geocam's maps through the same scene engine.

Every check runs the maps a user gets (tiling, scene-consistent weights, nodata, regions) on a
scene held in memory (:mod:`geocam.evaluation.scene`): sanity checks by model randomisation,
faithfulness of the region score, localisation against an annotation, and the literature's
baselines (:mod:`geocam.attribution`).
"""
