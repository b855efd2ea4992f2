"""The operator: kopf handlers that turn DatasetExports into CronJobs and pod results into status, Events and
metrics. The only package that imports kopf (or the Kubernetes client); the engine never sees Kubernetes."""
