// levee host capture: an AudioWorklet that mixes its input to mono and posts 20 ms frames
// (Float32Array, the context's sample rate) to the page, which wraps them in AudioData for the
// WebCodecs encoder. Used where MediaStreamTrackProcessor is missing.
'use strict';

class LeveeCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.frameSize = Math.round(sampleRate / 50); // 20 ms
    this.frame = new Float32Array(this.frameSize);
    this.filled = 0;
    this.running = true;
    this.port.onmessage = (ev) => {
      if (ev.data === 'stop') this.running = false;
    };
  }

  process(inputs) {
    const input = inputs[0];
    if (input && input.length > 0) {
      const channels = input.length;
      const length = input[0].length;
      for (let i = 0; i < length; i += 1) {
        let sum = 0;
        for (let c = 0; c < channels; c += 1) sum += input[c][i];
        this.frame[this.filled] = sum / channels;
        this.filled += 1;
        if (this.filled === this.frameSize) {
          this.port.postMessage(this.frame, [this.frame.buffer]);
          this.frame = new Float32Array(this.frameSize);
          this.filled = 0;
        }
      }
    }
    return this.running;
  }
}

registerProcessor('levee-capture', LeveeCapture);
