"""python -m cnnlab.report <dirs> [--out DIR] [--eval PROTOCOL ...] [--ckpt [NAME=]CKPT ...] (see cnnlab.report)."""

from cnnlab.report import main

main()
