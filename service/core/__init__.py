"""What the API and the workers share: settings, the database and its tables, the job state
machine, submission, the model and worker registries, datasets and the broker client.

Who commits: the core function that carries out a request owns its transaction and commits it
(submission.submit_job, model_registry.register, datasets.store_upload, sweeps.create, ...); the API's
routers translate HTTP to such calls and never commit, and a read ends by closing its session,
not by committing it. Core never speaks HTTP: it imports no web framework, and an Invalid's
locations are paths into the submitted document (("data", "dataset")), to which the API's one
error handler adds "body".
"""
