#!/usr/bin/env bash
# The ffmpeg/ffprobe commands the fleet runs for one 720p analyze job, as
# plain processes (the baseline of `scripts/bench transcode`). Usage: CLIP OUTDIR
set -euo pipefail
clip=$1; out=$2/$(basename "$clip" .mp4); mkdir -p "$out"
probe() { ffprobe -v error -protocol_whitelist file,pipe -print_format json -show_format -show_streams "file:$1" >/dev/null; }
ff() { ffmpeg -hide_banner -nostdin -y "$@" 2>/dev/null; }
# ingest: probe and decode check
probe "$clip"
ff -v error -xerror -protocol_whitelist file,pipe -i "file:$clip" -t 1 -map 0:v:0 -f null -
# preprocess: probe, normalize, probe, complexity, keyframes
probe "$clip"
ff -protocol_whitelist file,pipe -i "file:$clip" -map 0:v:0 -map '0:a:0?' -sn -dn \
  -vf scale=1280:720:flags=bicubic,setsar=1,fps=24,format=yuv420p -c:v libx264 -preset veryfast -crf 23 \
  -pix_fmt yuv420p -c:a aac -b:a 128k -ac 2 -movflags +faststart "file:$out/normalized.mp4"
probe "$out/normalized.mp4"
ff -protocol_whitelist file,pipe -i "file:$out/normalized.mp4" -an \
  -vf "scale=320:-2,format=gray,select='gte(scene\,0)',metadata=print:key=lavfi.scene_score,tblend=all_mode=difference,signalstats,metadata=print:key=lavfi.signalstats.YAVG" -f null -
ff -protocol_whitelist file,pipe -i "file:$out/normalized.mp4" -an -vf "fps=0.4,scale='min(640,iw)':-2" -frames:v 4 -q:v 3 "file:$out/keyframe-%02d.jpg"
# postprocess: probe, two renditions with probe and quality, poster, sprite
probe "$out/normalized.mp4"
for r in "h264_720p libx264 23" "h265_720p libx265 28"; do
  set -- $r
  extra=(); [ "$2" = libx265 ] && extra=(-tag:v hvc1 -x265-params log-level=error)
  ff -protocol_whitelist file,pipe -i "file:$out/normalized.mp4" -map 0:v:0 -map '0:a:0?' \
    -vf scale=1280:720:flags=bicubic,setsar=1,format=yuv420p -c:v "$2" -preset veryfast -crf "$3" "${extra[@]}" \
    -c:a aac -b:a 128k -movflags +faststart "file:$out/$1.mp4"
  probe "$out/$1.mp4"
  ff -protocol_whitelist file,pipe -i "file:$out/$1.mp4" -protocol_whitelist file,pipe -i "file:$out/normalized.mp4" \
    -lavfi "[1:v]scale=1280:720:flags=bicubic,setsar=1,format=yuv420p,split=2[r1][r2];[0:v]setsar=1,format=yuv420p,split=2[a1][a2];[a1][r1]psnr;[a2][r2]ssim" -f null -
done
ff -ss 1.000 -protocol_whitelist file,pipe -i "file:$out/normalized.mp4" -frames:v 1 -q:v 2 "file:$out/poster.jpg"
probe "$out/poster.jpg"
ff -protocol_whitelist file,pipe -i "file:$out/normalized.mp4" -an -vf "fps=1.0,scale=160:-2,tile=5x2" -frames:v 1 -q:v 4 "file:$out/sprite.jpg"
probe "$out/sprite.jpg"
