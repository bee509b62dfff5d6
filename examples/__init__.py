"""Runnable examples of codistill with user models and data; each file's header says how to run it."""
