"""Print the third-party requirements of the upload wheel, one per line (pip's requirements file format).

The commercial edition holds the upload sinks, so its environment needs what the upload
component needs beyond pop-agent itself (remote write's snappy, say).
"""

import sys
import zipfile
from email.parser import Parser

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def main(wheel: str) -> int:
    """Print the Requires-Dist entries of ``wheel`` that are not pop-agent."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode())
    for line in metadata.get_all("Requires-Dist") or []:
        if canonicalize_name(Requirement(line).name) != "pop-agent":
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
