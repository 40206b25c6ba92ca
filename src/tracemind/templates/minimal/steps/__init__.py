"""This project's steps: plain functions ``fn(ctx, state)`` that flows name as hooks."""
