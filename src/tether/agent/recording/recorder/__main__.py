"""``python -m tether.agent.recording.recorder``: sshd's ForceCommand for support sessions."""

import sys

from tether.agent.recording.recorder.session import main

sys.exit(main())
