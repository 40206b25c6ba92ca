"""Example user steps: the hooks that app/flows/*.yaml name as ``steps.<module>.<function>``.

In the container this directory is mounted read-only at /app, which is on the workers' import
path (PYTHONPATH=/app), so editing a step here takes effect for the next task without rebuilding
the image. On the host, make it importable for `tm enqueue` (which imports every hook to check the
flow) with ``PYTHONPATH=$PWD/app`` or by running `tm` from inside app/.
"""
