// Test audio written by the tests themselves: no fixture files.
import { writeFileSync } from "node:fs";

/** A 16-bit stereo WAV of `seconds` of a drum-like pulse, a bass tone and a centred melody. */
export function writeSong(path, seconds) {
  const rate = 44100;
  const frames = Math.round(seconds * rate);
  const data = Buffer.alloc(frames * 4);
  let noise = 12345;
  for (let i = 0; i < frames; i++) {
    const t = i / rate;
    noise = (noise * 1103515245 + 12345) % 2147483648;
    const beat = Math.exp(-((t % 0.5) * 30)) * (noise / 2147483648 - 0.5);
    const bass = 0.3 * Math.sin(2 * Math.PI * 55 * t);
    const voice = 0.2 * Math.sin(2 * Math.PI * (440 + 40 * Math.sin(2 * Math.PI * 0.5 * t)) * t);
    const pad = 0.1 * Math.sin(2 * Math.PI * 330 * t);
    data.writeInt16LE(Math.round(16000 * (beat + bass + voice + pad)), i * 4);
    data.writeInt16LE(Math.round(16000 * (beat + bass + voice - pad)), i * 4 + 2);
  }
  const header = Buffer.alloc(44);
  header.write("RIFF", 0);
  header.writeUInt32LE(36 + data.length, 4);
  header.write("WAVEfmt ", 8);
  header.writeUInt32LE(16, 16);
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(2, 22);
  header.writeUInt32LE(rate, 24);
  header.writeUInt32LE(rate * 4, 28);
  header.writeUInt16LE(4, 32);
  header.writeUInt16LE(16, 34);
  header.write("data", 36);
  header.writeUInt32LE(data.length, 40);
  writeFileSync(path, Buffer.concat([header, data]));
  return path;
}
