"""Running the pipeline on a laptop: embedded PostgreSQL, moto, a folder as the bucket.

Nothing here is used by the deployed Lambda functions.
"""
