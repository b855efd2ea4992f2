"""dsexport: export datasets on a schedule to cloud storage, exactly once."""

import logging

# A library stays silent unless its user configures logging (the CLI does, see dsexport.logs).
logging.getLogger("dsexport").addHandler(logging.NullHandler())
