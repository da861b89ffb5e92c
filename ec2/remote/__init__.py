"""The machinery that drives a machine once it is up: SSH (``ssh``), rsync (``sync``), runs in tmux
(``runs``), the one way a run starts (``startrun``: the trainer on every GPU, torchrun, the
watcher), readiness, the ~/.ssh entries, checkpoint carrying, and the pieces that run *on* the
instance beside the trainer: the spot-notice watcher (``spot_watch``), its IMDSv2 client and its
S3 copier."""
