"""qarnotfs: Qarnot storage buckets as Python objects, on the command line, and as folders.

``from qarnotfs import Connection, Bucket`` gives the Qarnot SDK's bucket API on boto3;
``qarnotfs.exceptions`` has the SDK's exception classes.
"""

from . import exceptions
from .bucket import Bucket
from .connection import Connection
from .objects import ObjectInfo

__version__ = "0.1.0"
__all__ = ["Bucket", "Connection", "ObjectInfo", "__version__", "exceptions"]
